"""Reports: the table model (table.py) below what builds it from MLflow (build.py) and what renders
it (formats.py, figures.py); confidence intervals in stats.py.
"""
