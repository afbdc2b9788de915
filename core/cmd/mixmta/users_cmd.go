package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/mixmta/mixmta/core/internal/config"
	"github.com/mixmta/mixmta/core/internal/users"
)

func usersCmd(load func() (*config.Config, error)) *cobra.Command {
	cmd := &cobra.Command{Use: "users", Short: "manage the users file of a listener with AUTH"}
	var file string
	var useBcrypt bool
	add := &cobra.Command{
		Use:   "add NAME",
		Short: "set NAME's password in the users file (Argon2id hash; the password is read from the terminal or stdin)",
		Args:  cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			if file == "" {
				cfg, err := load()
				if err != nil {
					return fmt.Errorf("%w (or name the users file with --file)", err)
				}
				for _, l := range cfg.Listeners {
					if l.Auth != nil {
						file = l.Auth.UsersFile
						break
					}
				}
				if file == "" {
					return fmt.Errorf("%s: no listener has auth.users_file; name the file with --file", cfg.Path)
				}
			}
			pw, err := readPassword(c.InOrStdin(), c.ErrOrStderr())
			if err != nil {
				return err
			}
			hash := users.HashArgon2id(pw)
			if useBcrypt {
				if len(pw) > 72 {
					return errors.New("bcrypt uses only the first 72 bytes of a password; use Argon2id (no --bcrypt)")
				}
				if hash, err = users.HashBcrypt(pw); err != nil {
					return err
				}
			}
			if err := users.Set(file, args[0], hash); err != nil {
				return err
			}
			fmt.Fprintf(c.OutOrStdout(), "user %s set in %s\n", args[0], file)
			return nil
		},
	}
	add.Flags().StringVar(&file, "file", "", "users file (default: auth.users_file of the first listener with auth in the config)")
	add.Flags().BoolVar(&useBcrypt, "bcrypt", false, "write a bcrypt hash instead of Argon2id")
	cmd.AddCommand(add)
	return cmd
}

// readPassword reads a password: from a terminal twice without echo, else
// one line of in. An empty password is refused.
func readPassword(in io.Reader, prompt io.Writer) (string, error) {
	f, isFile := in.(*os.File)
	if isFile {
		if t, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS); err == nil {
			quiet := *t
			quiet.Lflag &^= unix.ECHO
			if err := unix.IoctlSetTermios(int(f.Fd()), unix.TCSETS, &quiet); err != nil {
				return "", err
			}
			defer unix.IoctlSetTermios(int(f.Fd()), unix.TCSETS, t)
			r := bufio.NewReader(f)
			fmt.Fprint(prompt, "password: ")
			a, _ := r.ReadString('\n')
			fmt.Fprint(prompt, "\nagain: ")
			b, _ := r.ReadString('\n')
			fmt.Fprintln(prompt)
			if a != b {
				return "", errors.New("the passwords differ")
			}
			return nonEmpty(strings.TrimRight(a, "\r\n"))
		}
	}
	line, err := bufio.NewReader(in).ReadString('\n')
	if err != nil && !errors.Is(err, io.EOF) {
		return "", err
	}
	return nonEmpty(strings.TrimRight(line, "\r\n"))
}

func nonEmpty(pw string) (string, error) {
	if pw == "" {
		return "", errors.New("empty password")
	}
	return pw, nil
}
