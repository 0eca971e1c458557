//! Alerts (skeleton: the service issue fills this in).
