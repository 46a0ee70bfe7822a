//! Graph optimizer: the pass manager, constant folding, DCE/CSE and e-graph rewriting with `egg` will live here (issue 3). Nothing is implemented yet.
