"""What a person sees: plain-text tables for the command line, matplotlib figures, and the HTML report from Jinja2 templates.

Imports optimise and below; nothing below imports it.
"""
