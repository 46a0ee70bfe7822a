//! NVPTX back end (Kernel IR to LLVM IR to PTX through inkwell, feature `cuda`) will live here (issue 7). Nothing is implemented yet.
