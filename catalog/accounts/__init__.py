"""Who may do what: read access (public or login-only), write permissions, API tokens,
throttles and failed-login lockout. Views only attach these; the rules live here."""
