"""Browser tests (a package, so that its conftest and test modules do not shadow those of tests/)."""
