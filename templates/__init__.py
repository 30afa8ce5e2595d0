"""Templates for mail and web pages (packaged as listserv.templates)."""
