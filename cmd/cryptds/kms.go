package main

import (
	"errors"
	"fmt"

	"github.com/urfave/cli/v2"

	"github.com/cryptds/cryptds/devkms"
)

func kmsCommand() *cli.Command {
	return &cli.Command{
		Name:  "kms",
		Usage: "key server helpers",
		Subcommands: []*cli.Command{{
			Name:  "serve",
			Usage: "run the built-in dev KMIP server (NOT a production KMS: keys sit in a plain file)",
			Description: "The dev KMS is for demos and tests only. It listens on loopback, creates its CA,\n" +
				"server and client certificates in --state-dir on first start, and keeps keys there\n" +
				"unencrypted across restarts. Use a real KMIP server (PyKMIP, a vendor KMS) in production.\n\n" +
				"Example:\n   cryptds kms serve --dev --state-dir /tmp/kms --listen 127.0.0.1:5696",
			Flags: []cli.Flag{
				&cli.BoolFlag{Name: "dev", Usage: "acknowledge that this is the dev KMS (required)"},
				&cli.StringFlag{Name: "state-dir", Required: true, Usage: "`DIR` for certificates and keys"},
				&cli.StringFlag{Name: "listen", Value: defaultDevAddr, Usage: "loopback `ADDR` to listen on"},
				&cli.StringFlag{Name: "log-format", Value: "text", Usage: "log format: text or json"},
			},
			OnUsageError: usageError,
			Action: func(c *cli.Context) error {
				if !c.Bool("dev") {
					return withCode(ExitUsage, errors.New("kms serve runs only the dev KMS: pass --dev to acknowledge it is not for production"))
				}
				log, err := newLogger(c.App.ErrWriter, c.String("log-format"), false)
				if err != nil {
					return err
				}
				srv, err := devkms.New(devkms.Config{StateDir: c.String("state-dir"), Listen: c.String("listen"), Logger: log})
				if err != nil {
					return withCode(ExitKMS, fmt.Errorf("start dev KMS: %w", err))
				}
				defer srv.Close()
				// devkms.New has logged its NOT-for-production warning with
				// the address; the flags on stdout name the credentials.
				ca, cert, key := srv.ClientCredentials()
				fmt.Fprintf(c.App.Writer, "--kmip %s --kmip-ca %s --kmip-cert %s --kmip-key %s\n", srv.Addr(), ca, cert, key)
				<-c.Context.Done()
				log.Info("dev KMS stopping")
				return nil
			},
		}},
	}
}
