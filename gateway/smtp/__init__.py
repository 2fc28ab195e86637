"""ESMTP (RFC 5321) for the mx, submission and submissions roles."""
