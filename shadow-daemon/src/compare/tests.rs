//! Comparator tests.
