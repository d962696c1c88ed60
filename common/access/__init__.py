"""Who may do what: programmes' API keys and the audit log of what they did."""
