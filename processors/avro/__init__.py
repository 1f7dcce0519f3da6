"""Avro contracts (the schemas under ``schemas/``) and the serde that frames records with them. Imports only the bottom layer."""
