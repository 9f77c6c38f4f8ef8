"""The dashboard's screens: launch form, run dashboard, runs list, help and confirmations."""
