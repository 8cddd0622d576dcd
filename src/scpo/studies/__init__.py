"""Studies on top of a run's fit: learning curves and efficiency ratios (:mod:`.curves`), the τ x β sweep (:mod:`.sweep`)."""
