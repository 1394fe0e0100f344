// Package devkms is a small KMIP server for demos and tests, built on
// ovh/kmip-go's kmipserver. It is NOT a production key server: keys are kept
// in a plain file in its state directory.
package devkms
