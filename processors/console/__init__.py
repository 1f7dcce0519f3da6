"""The console: the people in the loop — reviewers, approvers, prompt owners, operators — in a browser, signed in."""
