"""Response actions: what an analyst (or a rule) does about an alert or an incident."""
