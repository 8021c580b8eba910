"""Metaflow datastores on S3 as a source of cards: where they are (settings), an async reader
(client), the source itself (source) and its pure parts. See the README's "S3 datastores"."""
