"""The scikit-learn classifiers the baselines stage builds, by the names the official benchmark uses, and the
module each lives in."""

SKLEARN_CLASSIFIERS = {
    "DecisionTreeClassifier": "sklearn.tree", "ExtraTreeClassifier": "sklearn.tree",
    "GaussianNB": "sklearn.naive_bayes", "GradientBoostingClassifier": "sklearn.ensemble",
    "KNeighborsClassifier": "sklearn.neighbors", "LinearSVC": "sklearn.svm",
    "LogisticRegression": "sklearn.linear_model", "MLPClassifier": "sklearn.neural_network",
    "PassiveAggressiveClassifier": "sklearn.linear_model", "Perceptron": "sklearn.linear_model",
    "RandomForestClassifier": "sklearn.ensemble", "SGDClassifier": "sklearn.linear_model", "SVC": "sklearn.svm",
}
