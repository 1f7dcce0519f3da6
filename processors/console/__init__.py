"""The console: reviewers, approvers, prompt owners and operators in a browser, signed in, with roles."""
