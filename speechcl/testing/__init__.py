"""Generated test data shared by the test suites (nothing here is used at run time)."""
