//! Unit tests of the offline chain, test files and their checks.
