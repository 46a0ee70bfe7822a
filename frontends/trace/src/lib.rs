//! Tracing front end (Rust tensor API recording Graph IR) will live here (issue 8). Nothing is implemented yet.
