"""Authentication: ``Authorization: Bearer ...`` → ``Principal``, by JWT (HS/RS/ES, key file or JWKS) or API key."""
