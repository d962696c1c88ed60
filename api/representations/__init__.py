"""How resources are written out: JSON today; CSV and FHIR exports belong beside it."""
