"""The writers of `emeval report`, one module per format; reporting/report.py lists them."""
