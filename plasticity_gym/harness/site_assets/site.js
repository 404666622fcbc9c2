// plasticity-gym web leaderboard: click a column header of a table.sortable to sort its rows.
// A cell sorts by its data-sort attribute (a number) when it has one, else by its text;
// empty values ("n/a") go last either way. A header's first click follows its data-first
// ("descending" for a metric where higher is better), later clicks flip the order.
"use strict";
(function () {
  function key(row, col) {
    var cell = row.cells[col];
    if (!cell) return null;
    var raw = cell.hasAttribute("data-sort") ? cell.getAttribute("data-sort") : cell.textContent.trim();
    return raw === "" ? null : raw;
  }

  function sortTable(table, col, th) {
    var current = th.getAttribute("aria-sort");
    var dir = current ? (current === "ascending" ? "descending" : "ascending")
                      : (th.getAttribute("data-first") || "ascending");
    var heads = table.tHead.rows[0].cells;
    for (var i = 0; i < heads.length; i++) heads[i].removeAttribute("aria-sort");
    th.setAttribute("aria-sort", dir);
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    var numeric = rows.every(function (r) { var k = key(r, col); return k === null || !isNaN(Number(k)); });
    var sign = dir === "ascending" ? 1 : -1;
    rows.sort(function (a, b) {
      var x = key(a, col), y = key(b, col);
      if (x === null || y === null) return (x === null) - (y === null);  // missing last
      var c = numeric ? Number(x) - Number(y) : x.localeCompare(y, undefined, {numeric: true});
      return sign * c;
    });
    rows.forEach(function (r) { body.appendChild(r); });
  }

  function init() {
    var tables = document.querySelectorAll("table.sortable");
    Array.prototype.forEach.call(tables, function (table) {
      var heads = table.tHead.rows[0].cells;
      Array.prototype.forEach.call(heads, function (th, col) {
        th.tabIndex = 0;
        th.title = th.title || "sort by this column";
        th.addEventListener("click", function () { sortTable(table, col, th); });
        th.addEventListener("keydown", function (e) {
          if (e.key === "Enter" || e.key === " ") { e.preventDefault(); sortTable(table, col, th); }
        });
      });
    });
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
