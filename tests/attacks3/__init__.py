"""Third attack round on issue 20 (an outside tester with the README and the claims alone): each
test failed before its fix."""
