"""Generated gRPC modules of rankq.proto (package rankq.v1); regenerate with generate.sh."""
