"""The paper reproductions: plans the runs of the papers' tables and figures and writes the reports."""
