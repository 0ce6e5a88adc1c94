// Command k8s is one multi-call binary holding the real upstream Kubernetes control plane
// and its client tools, built from Go modules for the local cluster tier of the e2e suite:
//
//	k8s kube-apiserver ...           k8s.io/kubernetes/cmd/kube-apiserver/app
//	k8s kube-controller-manager ...  k8s.io/kubernetes/cmd/kube-controller-manager/app
//	k8s etcd ...                     go.etcd.io/etcd/server/v3/etcdmain
//	k8s kubectl ...                  k8s.io/kubectl/pkg/cmd
//	k8s helm ...                     helm.sh/helm/v4/pkg/cmd
//	k8s agnhost ...                  k8s.io/kubernetes/test/images/agnhost/*
//
// The applet is chosen by the name the binary was called by (symlinks named after each
// applet in e2e/cluster/bin) or, failing that, by the first argument. Nothing here
// changes what the upstream commands do; this file only dispatches.
package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	_ "time/tzdata" // as upstream: CronJob time zones

	"github.com/spf13/cobra"
	"go.etcd.io/etcd/server/v3/etcdmain"
	helmcmd "helm.sh/helm/v4/pkg/cmd"
	helmkube "helm.sh/helm/v4/pkg/kube"
	_ "k8s.io/client-go/plugin/pkg/client/auth"
	"k8s.io/component-base/cli"
	"k8s.io/component-base/logs"
	_ "k8s.io/component-base/logs/json/register"
	_ "k8s.io/component-base/metrics/prometheus/clientgo"
	_ "k8s.io/component-base/metrics/prometheus/version"
	kubectlcmd "k8s.io/kubectl/pkg/cmd"
	kubectlutil "k8s.io/kubectl/pkg/cmd/util"
	apiserver "k8s.io/kubernetes/cmd/kube-apiserver/app"
	kcm "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	"k8s.io/kubernetes/test/images/agnhost/liveness"
	"k8s.io/kubernetes/test/images/agnhost/netexec"
	"k8s.io/kubernetes/test/images/agnhost/pause"
	servehostname "k8s.io/kubernetes/test/images/agnhost/serve-hostname"
)

var applets = map[string]func(args []string) int{
	"kube-apiserver": func(args []string) int {
		return runCobra(apiserver.NewAPIServerCommand(), args)
	},
	"kube-controller-manager": func(args []string) int {
		return runCobra(kcm.NewControllerManagerCommand(), args)
	},
	"etcd": func(args []string) int {
		etcdmain.Main(append([]string{"etcd"}, args...))
		return 0
	},
	"kubectl": func(args []string) int {
		os.Args = append([]string{"kubectl"}, args...)
		logs.GlogSetter(kubectlcmd.GetLogVerbosity(os.Args)) //nolint:errcheck
		command := kubectlcmd.NewDefaultKubectlCommand()
		command.SetArgs(args)
		if err := cli.RunNoErrOutput(command); err != nil {
			kubectlutil.CheckErr(err)
		}
		return 0
	},
	"helm": func(args []string) int {
		helmkube.ManagedFieldsManager = "helm"
		command, err := helmcmd.NewRootCmd(os.Stdout, args, helmcmd.SetupLogging)
		if err != nil {
			fmt.Fprintln(os.Stderr, "helm:", err)
			return 1
		}
		if err := command.Execute(); err != nil {
			var cerr helmcmd.CommandError
			if errors.As(err, &cerr) {
				return cerr.ExitCode
			}
			return 1
		}
		return 0
	},
	"agnhost": func(args []string) int {
		root := &cobra.Command{Use: "agnhost", Version: "2.52-portcullis-local"}
		root.AddCommand(netexec.CmdNetexec, pause.CmdPause, servehostname.CmdServeHostname, liveness.CmdLiveness)
		root.SetArgs(args)
		return cli.Run(root)
	},
}

func runCobra(command *cobra.Command, args []string) int {
	command.SetArgs(args)
	return cli.Run(command)
}

func main() {
	name := filepath.Base(os.Args[0])
	args := os.Args[1:]
	run, ok := applets[name]
	if !ok && len(args) > 0 {
		run, ok = applets[args[0]]
		name, args = args[0], args[1:]
	}
	if !ok {
		fmt.Fprintf(os.Stderr, "usage: k8s APPLET [ARGS...]\napplets: kube-apiserver kube-controller-manager etcd kubectl helm agnhost\n")
		os.Exit(64)
	}
	os.Args = append([]string{name}, args...)
	os.Exit(run(args))
}
