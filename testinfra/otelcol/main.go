// A minimal OpenTelemetry Collector for flowwatch's tests: the collector's own OTLP receiver
// (gRPC and HTTP, from its published Go modules) feeding a consumer that appends every batch of
// logs it receives, as OTLP JSON (pdata's marshaler), one line per batch, to a file. The test
// reads that file to see exactly what arrived. Test infrastructure only; the product has no Go.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"sync"
	"syscall"

	"go.opentelemetry.io/collector/component"
	"go.opentelemetry.io/collector/component/componenttest"
	"go.opentelemetry.io/collector/confmap"
	"go.opentelemetry.io/collector/consumer"
	"go.opentelemetry.io/collector/pdata/plog"
	"go.opentelemetry.io/collector/receiver"
	"go.opentelemetry.io/collector/receiver/otlpreceiver"
)

func main() {
	httpAddr := flag.String("http", "127.0.0.1:4318", "OTLP/HTTP listen address (empty: off)")
	grpcAddr := flag.String("grpc", "", "OTLP/gRPC listen address (empty: off)")
	out := flag.String("out", "", "file the received logs are appended to (OTLP JSON, one batch a line)")
	flag.Parse()
	if *out == "" {
		fmt.Fprintln(os.Stderr, "--out is required")
		os.Exit(2)
	}
	file, err := os.OpenFile(*out, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		fmt.Fprintln(os.Stderr, "opening --out:", err)
		os.Exit(1)
	}
	defer file.Close()

	var mu sync.Mutex
	marshaler := &plog.JSONMarshaler{}
	logs, err := consumer.NewLogs(func(_ context.Context, ld plog.Logs) error {
		b, err := marshaler.MarshalLogs(ld)
		if err != nil {
			return err
		}
		mu.Lock()
		defer mu.Unlock()
		_, err = file.Write(append(b, '\n'))
		return err
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, "consumer:", err)
		os.Exit(1)
	}

	factory := otlpreceiver.NewFactory()
	cfg := factory.CreateDefaultConfig()
	protocols := map[string]any{}
	if *httpAddr != "" {
		protocols["http"] = map[string]any{"endpoint": *httpAddr}
	}
	if *grpcAddr != "" {
		protocols["grpc"] = map[string]any{"endpoint": *grpcAddr}
	}
	if err := confmap.NewFromStringMap(map[string]any{"protocols": protocols}).Unmarshal(cfg); err != nil {
		fmt.Fprintln(os.Stderr, "receiver config:", err)
		os.Exit(1)
	}
	set := receiver.Settings{
		ID:                component.NewID(factory.Type()),
		TelemetrySettings: componenttest.NewNopTelemetrySettings(),
		BuildInfo:         component.NewDefaultBuildInfo(),
	}
	rcv, err := factory.CreateLogs(context.Background(), set, cfg, logs)
	if err != nil {
		fmt.Fprintln(os.Stderr, "creating the OTLP receiver:", err)
		os.Exit(1)
	}
	if err := rcv.Start(context.Background(), componenttest.NewNopHost()); err != nil {
		fmt.Fprintln(os.Stderr, "starting the OTLP receiver:", err)
		os.Exit(1)
	}
	fmt.Printf("ready http=%s grpc=%s\n", *httpAddr, *grpcAddr)

	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	<-stop
	_ = rcv.Shutdown(context.Background())
}
