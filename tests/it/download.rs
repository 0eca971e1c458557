//! Integration tests: download.
