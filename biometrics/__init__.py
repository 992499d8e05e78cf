"""biometrics package."""
