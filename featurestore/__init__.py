"""featurestore"""
