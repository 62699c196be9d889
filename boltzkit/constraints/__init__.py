"""Constraint sets (equalities h(x) = 0, inequalities g(x) <= 0) for constrained sampling.

Not implemented yet: this package is reserved for the OLLA work (issue 8).
"""
