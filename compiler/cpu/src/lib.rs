//! Cranelift back end (Kernel IR to machine code) will live here (issue 4). Nothing is implemented yet.
