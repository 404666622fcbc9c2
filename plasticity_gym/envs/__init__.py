"""The environments: one module per environment, plus the shared supervised-stream base.

Modules are imported lazily by Gymnasium's entry points, so importing this package stays cheap.
"""
