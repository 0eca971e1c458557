//! Rotation without a restart, and the client certificate's expiry in /status, /metrics and the alerts.
