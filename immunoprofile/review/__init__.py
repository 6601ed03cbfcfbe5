"""`immunoprofile review`: check and correct a run's gates in the browser, outliers first."""
