"""Reading Metaflow datastores on S3: where they are (settings) and an async reader (client).
Not wired into the server yet; see docs/s3.md."""
