"""The manifest corpus shared by the agreement, CRD/CEL and fuzz tests."""
