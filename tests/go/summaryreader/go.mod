module summaryreader

go 1.19
