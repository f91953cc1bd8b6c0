// Package baton holds Baton's API description for batond to serve. The
// code lives in server/, agent/ and client/; see README.md.
package baton

import _ "embed"

// OpenAPI is the OpenAPI (Swagger 2.0) document of the REST gateway,
// generated from proto/baton/v1 by `make generate`.
//
//go:embed gen/baton/v1/baton.swagger.json
var OpenAPI []byte
