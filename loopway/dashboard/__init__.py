"""The dashboard page: static HTML, CSS and JavaScript, served by ``transports.dashboard_routes``."""
