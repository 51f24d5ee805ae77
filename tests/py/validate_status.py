"""Validate status documents against docs/status.schema.json.

Usage: validate_status.py SCHEMA DOCUMENTS_JSON   (a JSON array of documents)
Prints the number validated; exits 1 with the first error otherwise.
"""
import json
import sys

import jsonschema

schema = json.load(open(sys.argv[1]))
jsonschema.Draft202012Validator.check_schema(schema)
validator = jsonschema.Draft202012Validator(schema)
docs = json.load(open(sys.argv[2]))
for i, doc in enumerate(docs):
    errors = sorted(validator.iter_errors(doc), key=lambda e: list(e.path))
    if errors:
        print(f"document {i} invalid: {errors[0].message} at {list(errors[0].path)}\n{json.dumps(doc)}")
        sys.exit(1)
print(len(docs))
