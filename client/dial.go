// Package client is the Go client library for Baton's control plane.
//
// [Dial] opens a gRPC connection (plain on loopback, TLS when a CA file is
// given); [New] wraps it with idiomatic methods over the generated stubs.
// The baton-agent uses Dial too, so agents and the CLI verify the control
// plane the same way.
package client

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
)

// DefaultAddr is the control plane's default gRPC address.
const DefaultAddr = "127.0.0.1:7700"

// DialConfig says how to reach the control plane.
type DialConfig struct {
	// Addr is the control plane's gRPC address, host:port. Defaults to
	// DefaultAddr.
	Addr string
	// CAFile, when set, turns TLS on and verifies the server's certificate
	// against the PEM bundle in this file.
	CAFile string
	// TLS turns TLS on with the system's root CAs when CAFile is empty.
	TLS bool
	// ServerName overrides the host name verified in the server's
	// certificate. Defaults to the host part of Addr.
	ServerName string
	// CertFile and KeyFile, when set, are the client certificate and key
	// presented to the control plane (an agent's identity). They are read
	// at every handshake, so a renewed certificate is used from the next
	// connection on without a restart. They turn TLS on.
	CertFile string
	KeyFile  string
	// Token, when set, is the API token sent with every call as
	// "authorization: Bearer <token>".
	Token string
	// InsecureToken allows sending Token without TLS to an address that is
	// not loopback. Without it, Dial refuses: anyone on the path could
	// read the token and act with its role.
	InsecureToken bool
}

// TLSConfig returns the client TLS configuration c asks for, or nil for a
// plaintext connection.
func (c DialConfig) TLSConfig() (*tls.Config, error) {
	if (c.CertFile == "") != (c.KeyFile == "") {
		return nil, errors.New("a client certificate needs both its certificate and its key file")
	}
	if c.CAFile == "" && !c.TLS && c.CertFile == "" {
		return nil, nil
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: c.ServerName}
	if c.CertFile != "" {
		// Fail now on a bad pair rather than at the first handshake.
		if _, err := tls.LoadX509KeyPair(c.CertFile, c.KeyFile); err != nil {
			return nil, fmt.Errorf("client certificate: %w", err)
		}
		cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			cert, err := tls.LoadX509KeyPair(c.CertFile, c.KeyFile)
			if err != nil {
				return nil, fmt.Errorf("client certificate: %w", err)
			}
			return &cert, nil
		}
	}
	if c.CAFile != "" {
		pem, err := os.ReadFile(c.CAFile)
		if err != nil {
			return nil, fmt.Errorf("read CA file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("CA file %s: no PEM certificates found", c.CAFile)
		}
		cfg.RootCAs = pool
	}
	return cfg, nil
}

// Fixed HTTP/2 flow-control windows for the agent stream, used by both
// ends. A fixed window turns off gRPC's bandwidth-delay probing, which sends
// a ping and a window update in answer to nearly every message of a
// low-traffic stream. 1 MiB per stream keeps 20 MB/s flowing even at 50 ms
// round trips, far beyond what control messages and log chunks need.
const (
	StreamWindow = 1 << 20
	ConnWindow   = 4 << 20
)

// Dial returns a client connection to the control plane. It does not wait
// for the connection to be established; the first call does.
func Dial(c DialConfig, opts ...grpc.DialOption) (*grpc.ClientConn, error) {
	if c.Addr == "" {
		c.Addr = DefaultAddr
	}
	tc, err := c.TLSConfig()
	if err != nil {
		return nil, err
	}
	creds := insecure.NewCredentials()
	if tc != nil {
		creds = credentials.NewTLS(tc)
	}
	opts = append([]grpc.DialOption{grpc.WithTransportCredentials(creds)}, opts...)
	if c.Token != "" {
		if tc == nil && !c.InsecureToken && !loopback(c.Addr) {
			return nil, fmt.Errorf("refusing to send an API token without TLS to %s: anyone on the network path could "+
				"read it; use TLS (--tls or --ca-file), or --insecure-token if this network is trusted", c.Addr)
		}
		opts = append(opts, grpc.WithPerRPCCredentials(bearer{token: c.Token, secure: tc != nil}))
	}
	conn, err := grpc.NewClient(c.Addr, opts...)
	if err != nil {
		return nil, errors.Join(fmt.Errorf("dial %s", c.Addr), err)
	}
	return conn, nil
}

// bearer sends an API token with every call.
type bearer struct {
	token string
	// secure makes grpc refuse to send the token over a connection
	// without transport security (always, once TLS is configured).
	secure bool
}

func (b bearer) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + b.token}, nil
}

func (b bearer) RequireTransportSecurity() bool { return b.secure }

// loopback reports whether addr (host:port, or a grpc target such as
// dns:///host:port) names this machine: localhost or a loopback IP.
func loopback(addr string) bool {
	if i := strings.LastIndex(addr, "///"); i >= 0 {
		addr = addr[i+3:]
	}
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		host = addr
	}
	host = strings.Trim(host, "[]")
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
