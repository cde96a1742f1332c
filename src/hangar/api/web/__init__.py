"""The few web pages a browser must show: served by the API over its TLS, no framework."""
