"""Results: the paper's numbers, the zoo, the reproduction plan, comparisons, verdicts, figures and the report.
May import randmask.experiments, randmask.attacks and randmask.core."""
