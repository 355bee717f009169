package main

import (
	"context"
	"net/http"
	"os"

	"google.golang.org/grpc/metadata"
)

// apiToken is the bearer token sent with every request, from RANKQ_API_TOKEN (the variable the
// rankq CLI and client read); empty: none is sent, as against a server without tokens.
var apiToken = os.Getenv("RANKQ_API_TOKEN")

func authorize(req *http.Request) {
	if apiToken != "" {
		req.Header.Set("Authorization", "Bearer "+apiToken)
	}
}

// authContext carries the token as gRPC `authorization` metadata on every call made with ctx.
func authContext(ctx context.Context) context.Context {
	if apiToken == "" {
		return ctx
	}
	return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+apiToken)
}
