module github.com/cryptds/cryptds

go 1.26.8
