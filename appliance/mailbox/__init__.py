"""IMAP's SEARCH and view helpers, on their way to appliance/imap/ (the stores live in appliance/store/)."""
