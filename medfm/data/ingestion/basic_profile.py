"""DICOM PS3.15 Table E.1-1, the Basic Application Level Confidentiality Profile, as data.

pydicom ships no copy of the table, and dicognito implements only part of it (see
:mod:`medfm.data.ingestion.deidentify`), so :data:`BASIC_PROFILE` lists the table's rows by
pydicom keyword with their Basic Profile action. It follows Table E.1-1 of DICOM PS3.15 2024b
(https://dicom.nema.org/medical/dicom/2024b/output/chtml/part15/chapter_E.html#table_E.1-1):
all 617 of its rows that name one attribute, every one a keyword in pydicom 3's dictionary.
The rows that name no single attribute are handled by group in the de-identification itself:
Curve Data (50xx,xxxx), Overlay Data (60xx,3000), Overlay Comments (60xx,4000) and the private
attributes (odd groups), all ``X``.

The actions (PS3.15 E.1.1):

* ``X``: remove;
* ``Z``: replace with a zero-length value, or a dummy value consistent with the VR;
* ``D``: replace with a non-zero-length dummy value consistent with the VR;
* ``U``: replace the UID with another one, consistently within the set of instances;
* ``X/Z``, ``X/D``, ``Z/D``, ``X/Z/D``: the first, unless the IOD needs the attribute present
  (``Z``) or present with a value (``D``);
* ``X/Z/U*``: remove or empty, or replace every UID inside the sequence's items.

Example:
    >>> BASIC_PROFILE["PerformedStationAETitle"], BASIC_PROFILE["StudyInstanceUID"]
    ('X', 'U')
"""

from __future__ import annotations

# One entry per action: the keywords of the table's rows with that action, sorted.
_ROWS = {
    "X": """
        AcquisitionComments AcquisitionProtocolDescription ActualHumanPerformersSequence
        AdditionalPatientHistory AddressTrial AdmissionID AdmittingDate
        AdmittingDiagnosesCodeSequence AdmittingDiagnosesDescription AdmittingTime
        AffectedSOPInstanceUID Allergies AnnotationGroupDescription ApprovalStatusDateTime
        Arbitrary AssertionExpirationDateTime AuthorObserverSequence BeamDescription
        BolusDescription BranchOfService CalibrationDate CalibrationTime CameraOwnerName
        CassetteID CertifiedTimestamp ClinicalTrialProtocolEthicsCommitteeApprovalNumber
        ClinicalTrialSeriesDescription ClinicalTrialSeriesID ClinicalTrialTimePointDescription
        CommentsOnRadiationDose CommentsOnThePerformedProcedureStep CompensatorDescription
        ConfidentialityConstraintOnPatientDataDescription
        ConsultingPhysicianIdentificationSequence ContainerComponentID ContainerDescription
        ContentCreatorIdentificationCodeSequence ContrastBolusStartTime ContrastBolusStopTime
        ContributionDateTime ContributionDescription CountryOfResidence CreationDate
        CreationTime CurrentObserverTrial CurrentPatientLocation CurveDate CurveTime
        CustodialOrganizationSequence DataSetTrailingPadding
        DateOfDocumentOrVerbalTransactionTrial DateOfInstallation DateOfLastCalibration
        DateOfManufacture DateOfSecondaryCapture DateTimeOfLastCalibration
        DecompositionDescription DerivationDescription DeviceDescription
        DeviceSettingDescription DigitalSignaturesSequence DischargeDate
        DischargeDiagnosisDescription DischargeTime DisplacementReferenceLabel
        DistributionAddress DistributionName DoseReferenceDescription EntityDescription
        EntityName EquipmentFrameOfReferenceDescription
        EthicsCommitteeApprovalEffectivenessEndDate
        EthicsCommitteeApprovalEffectivenessStartDate EthnicGroup ExpectedCompletionDateTime
        FilterLookupTableDescription FindingsGroupRecordingDateTrial
        FindingsGroupRecordingTimeTrial FixationDeviceDescription FractionGroupDescription
        FrameComments GPSAltitude GPSAltitudeRef GPSAreaInformation GPSDOP GPSDateStamp
        GPSDestBearing GPSDestBearingRef GPSDestDistance GPSDestDistanceRef GPSDestLatitude
        GPSDestLatitudeRef GPSDestLongitude GPSDestLongitudeRef GPSDifferential GPSImgDirection
        GPSImgDirectionRef GPSLatitude GPSLatitudeRef GPSLongitude GPSLongitudeRef GPSMapDatum
        GPSMeasureMode GPSProcessingMethod GPSSatellites GPSSpeed GPSSpeedRef GPSStatus
        GPSTimeStamp GPSTrack GPSTrackRef GPSVersionID GantryID GeneratorID
        HL7DocumentEffectiveTime HumanPerformerName HumanPerformerOrganization IconImageSequence
        IdentifyingComments ImageComments ImagePresentationComments
        ImagingServiceRequestComments Impressions InstanceCoercionDateTime InstanceOriginStatus
        InstitutionAddress InstitutionalDepartmentName InstitutionalDepartmentTypeCodeSequence
        InsurancePlanIdentification IntendedFractionStartTime
        IntendedRecipientsOfResultsIdentificationSequence InterpretationApprovalDate
        InterpretationApprovalTime InterpretationApproverSequence InterpretationAuthor
        InterpretationDiagnosisDescription InterpretationID InterpretationIDIssuer
        InterpretationRecordedDate InterpretationRecordedTime InterpretationRecorder
        InterpretationText InterpretationTranscriber InterpretationTranscriptionDate
        InterpretationTranscriptionTime InterventionDrugStartTime InterventionDrugStopTime
        IssueDateOfImagingServiceRequest IssueTimeOfImagingServiceRequest IssuerOfAdmissionID
        IssuerOfAdmissionIDSequence IssuerOfClinicalTrialProtocolID
        IssuerOfClinicalTrialSeriesID IssuerOfClinicalTrialSiteID IssuerOfClinicalTrialSubjectID
        IssuerOfClinicalTrialSubjectReadingID IssuerOfClinicalTrialTimePointID IssuerOfPatientID
        IssuerOfServiceEpisodeID IssuerOfServiceEpisodeIDSequence LastMenstrualDate LensMake
        LensModel LensSerialNumber LensSpecification LongDeviceDescription MAC MakerNote
        MedicalAlerts MedicalRecordLocator MilitaryRank ModifiedAttributesSequence
        ModifiedImageDate ModifiedImageDescription ModifiedImageTime ModifyingDeviceID
        MultienergyAcquisitionDescription NameOfPhysiciansReadingStudy
        NamesOfIntendedRecipientsOfResults NetworkID NonconformingDataElementValue
        NonconformingModifiedAttributesSequence ObservationDateTrial ObservationStartDateTime
        ObservationTimeTrial Occupation OrderCallbackPhoneNumber OrderCallbackTelecomInformation
        OrderEnteredBy OrderEntererLocation OriginalAttributesSequence Originator
        OtherClinicalTrialProtocolIDsSequence OtherPatientIDs OtherPatientIDsSequence
        OtherPatientNames OverlayDate OverlayTime ParticipantSequence PatientAddress PatientAge
        PatientBirthName PatientBirthTime PatientComments PatientInstitutionResidence
        PatientInsurancePlanCodeSequence PatientMotherBirthName
        PatientPrimaryLanguageCodeSequence PatientPrimaryLanguageModifierCodeSequence
        PatientReligiousPreference PatientSetupPhotoDescription PatientSize PatientState
        PatientTelecomInformation PatientTelephoneNumbers PatientTransportArrangements
        PatientTreatmentPreparationMethodDescription
        PatientTreatmentPreparationProcedureParameterDescription PatientWeight PerformedLocation
        PerformedProcedureStepDescription PerformedProcedureStepEndDate
        PerformedProcedureStepEndDateTime PerformedProcedureStepEndTime PerformedProcedureStepID
        PerformedProcedureStepStartDate PerformedProcedureStepStartDateTime
        PerformedProcedureStepStartTime PerformedStationAETitle
        PerformedStationGeographicLocationCodeSequence PerformedStationName
        PerformedStationNameCodeSequence PerformingPhysicianIdentificationSequence
        PerformingPhysicianName PersonAddress PersonTelecomInformation PersonTelephoneNumbers
        PhysicianApprovingInterpretation PhysiciansOfRecord
        PhysiciansOfRecordIdentificationSequence PhysiciansReadingStudyIdentificationSequence
        PlateID PositionAcquisitionTemplateDescription PositionAcquisitionTemplateName
        PreMedication PregnancyStatus PrescriptionDescription PresentationCreationDate
        PresentationCreationTime PriorTreatmentDoseDescription ProcedureStepCancellationDateTime
        ProductExpirationDateTime PyramidDescription PyramidLabel ROICreatorSequence ROIDateTime
        ROIDescription ROIGenerationDescription ROIInterpreterSequence ROIObservationDateTime
        ROIObservationDescription ROIObservationLabel RTPlanDescription RTPlanName
        RadiopharmaceuticalStartDateTime RadiopharmaceuticalStartTime
        RadiopharmaceuticalStopDateTime RadiopharmaceuticalStopTime ReasonForOmissionDescription
        ReasonForRequestedProcedureCodeSequence ReasonForStudy ReasonForTheImagingServiceRequest
        ReasonForTheRequestedProcedure ReasonForVisit ReasonForVisitCodeSequence ReceivingAE
        ReferencedDigitalSignatureSequence ReferencedPatientAliasSequence
        ReferencedPatientPhotoSequence ReferencedPatientSequence
        ReferencedSOPInstanceMACSequence ReferringPhysicianAddress
        ReferringPhysicianIdentificationSequence ReferringPhysicianTelephoneNumbers
        RegionOfResidence RequestAttributesSequence RequestedContrastAgent
        RequestedProcedureComments RequestedProcedureID RequestedProcedureLocation
        RequestedSeriesDescription RequestingAE RequestingPhysician RequestingService
        RespiratoryMotionCompensationTechniqueDescription ResponsibleOrganization
        ResponsiblePerson ResultsComments ResultsDistributionListSequence ResultsID
        ResultsIDIssuer RetrieveAETitle SOPAuthorizationDateTime ScheduledAdmissionDate
        ScheduledAdmissionTime ScheduledDischargeDate ScheduledDischargeTime
        ScheduledHumanPerformersSequence ScheduledPatientInstitutionResidence
        ScheduledPerformingPhysicianIdentificationSequence ScheduledPerformingPhysicianName
        ScheduledProcedureStepDescription ScheduledProcedureStepEndDate
        ScheduledProcedureStepEndTime ScheduledProcedureStepExpirationDateTime
        ScheduledProcedureStepID ScheduledProcedureStepLocation
        ScheduledProcedureStepModificationDateTime ScheduledProcedureStepStartDate
        ScheduledProcedureStepStartDateTime ScheduledProcedureStepStartTime
        ScheduledStationAETitle ScheduledStationGeographicLocationCodeSequence
        ScheduledStationName ScheduledStationNameCodeSequence ScheduledStudyLocation
        ScheduledStudyLocationAETitle ScheduledStudyStartDate ScheduledStudyStartTime
        ScheduledStudyStopDate ScheduledStudyStopTime SeriesDescription
        ServiceEpisodeDescription ServiceEpisodeID SetupTechniqueDescription
        ShieldingDeviceDescription SlideIdentifier SmokingStatus SourceManufacturer SpecialNeeds
        SpecimenAccessionNumber SpecimenDetailedDescription SpecimenShortDescription
        StationAETitle StructureSetDescription StructureSetName StudyArrivalDate
        StudyArrivalTime StudyComments StudyCompletionDate StudyCompletionTime StudyDescription
        StudyIDIssuer StudyReadDate StudyReadTime StudyVerifiedDate StudyVerifiedTime
        SubstanceAdministrationDateTime TelephoneNumberTrial TemplateLocalVersion
        TemplateVersion TextComments TextString TimeOfDocumentCreationOrVerbalTransactionTrial
        TimeOfLastCalibration TimeOfSecondaryCapture TimezoneOffsetFromUTC TopicAuthor
        TopicKeywords TopicSubject TopicTitle TransducerIdentificationSequence TreatmentSites
        UDISequence UniqueDeviceIdentifier VerbalSourceIdentifierCodeSequenceTrial
        VerbalSourceTrial VisitComments WaveformFilterDescription XRayDetectorLabel
        """,
    "Z": """
        AccessionNumber CalibrationDateTime ClinicalTrialCoordinatingCenterName
        ClinicalTrialProtocolName ClinicalTrialSiteID ClinicalTrialSiteName
        ClinicalTrialTimePointID ConceptualVolumeCombinationDescription
        ConceptualVolumeDescription ConsultingPhysicianName DeviceAlternateIdentifier
        FillerOrderNumberImagingServiceRequest FractionationNotes
        IssuerOfTheContainerIdentifierSequence IssuerOfTheSpecimenIdentifierSequence
        ManufacturerDeviceIdentifier ParticipationDateTime PatientBirthDate PatientName
        PatientSex PlacerOrderNumberImagingServiceRequest PrescriptionNotes
        PrescriptionNotesSequence ROIInterpreter ROIName RTAccessoryDeviceSlotID
        RTAccessoryHolderSlotID RTPhysicianIntentNarrative RadiationGenerationModeDescription
        ReasonForSuperseding ReferringPhysicianName ReviewDate ReviewTime SourceOfPreviousValues
        SpecimenPreparationSequence StructureSetDate StructureSetTime StudyDate StudyID
        StudyTime TreatmentTechniqueNotes VerifyingObserverIdentificationCodeSequence
        """,
    "D": """
        AcquisitionFieldOfViewLabel AnnotationGroupLabel AnnotationGroupUID AssertionDateTime
        AttributeModificationDateTime BeamHoldTransitionDateTime CertificateOfSigner
        ClinicalTrialProtocolEthicsCommitteeName ClinicalTrialProtocolID
        ClinicalTrialSponsorName ClinicalTrialSubjectID ClinicalTrialSubjectReadingID
        ContainerIdentifier ContentSequence ContextGroupLocalVersion ContextGroupVersion Date
        DateTime DecayCorrectionDateTime DestinationAE DeviceLabel DigitalSignatureDateTime
        EffectiveDateTime EncapsulatedDocument EntityLabel EntityLongLabel
        ExclusionStartDateTime FlowIdentifier FlowIdentifierSequence FrameAcquisitionDateTime
        FrameOriginTimestamp FrameReferenceDateTime FunctionalSyncPulse
        GraphicAnnotationSequence HangingProtocolCreationDateTime ImpedanceMeasurementDateTime
        InformationIssueDateTime InterlockDateTime InterlockDescription
        InterlockOriginDescription ModifyingSystem OverrideDateTime
        PersonIdentificationCodeSequence PersonName RTPlanLabel RTPrescriptionLabel
        RTToleranceSetLabel RadiationDoseIdentificationLabel RadiationDoseInVivoMeasurementLabel
        RadiationGenerationModeLabel ReasonForTheAttributeModification
        RecordedRTControlPointDateTime ReferencedDateTime SafePositionExitDate
        SafePositionExitTime SafePositionReturnDate SafePositionReturnTime SelectorAEValue
        SelectorASValue SelectorDAValue SelectorDTValue SelectorLOValue SelectorLTValue
        SelectorOBValue SelectorPNValue SelectorSHValue SelectorSTValue SelectorTMValue
        SelectorUNValue SelectorURValue SelectorUTValue SourceEndDateTime SourceIdentifier
        SourceStartDateTime SourceStrengthReferenceDate SourceStrengthReferenceTime
        SpecimenIdentifier StructureSetLabel Time TreatmentControlPointDate
        TreatmentControlPointTime TreatmentPositionGroupLabel
        TreatmentToleranceViolationDateTime TreatmentToleranceViolationDescription
        UserContentLabel UserContentLongLabel VerificationDateTime VerifyingObserverName
        VerifyingObserverSequence VerifyingOrganization XRayDetectorID XRaySourceID
        """,
    "U": """
        AcquisitionUID ConcatenationUID ConceptualVolumeUID ConstituentConceptualVolumeUID
        DeviceUID DigitalSignatureUID DimensionOrganizationUID DoseReferenceUID
        DosimetricObjectiveUID FailedSOPInstanceUIDList FiducialUID FrameOfReferenceUID
        InstanceCreatorUID IrradiationEventUID LargePaletteColorLookupTableUID
        ManufacturerDeviceClassUID MediaStorageSOPInstanceUID MultiplexGroupUID
        ObservationSubjectUIDTrial ObservationUID PaletteColorLookupTableUID PatientSetupUID
        PresentationDisplayCollectionUID PresentationSequenceCollectionUID PyramidUID
        RTTreatmentPhaseUID ReferencedConceptualVolumeUID ReferencedDoseReferenceUID
        ReferencedDosimetricObjectiveUID ReferencedFiducialsUID ReferencedFrameOfReferenceUID
        ReferencedGeneralPurposeScheduledProcedureStepTransactionUID
        ReferencedObservationUIDTrial ReferencedSOPInstanceUID ReferencedSOPInstanceUIDInFile
        ReferencedTreatmentPositionGroupUID RelatedFrameOfReferenceUID RequestedSOPInstanceUID
        SOPInstanceUID SeriesInstanceUID SourceConceptualVolumeUID SourceFrameOfReferenceUID
        SpecimenUID StorageMediaFileSetUID StudyInstanceUID SynchronizationFrameOfReferenceUID
        TargetUID TemplateExtensionCreatorUID TemplateExtensionOrganizationUID TrackingUID
        TransactionUID TreatmentPositionGroupUID TreatmentSessionUID UID
        """,
    "X/Z": """
        AcquisitionContextSequence AcquisitionDate AcquisitionTime BarcodeValue LabelText
        PatientSexNeutered ReferencedStudySequence RequestedProcedureDescription ReviewerName
        SourceSerialNumber TreatmentMachineName
        """,
    "X/D": """
        AcquisitionDeviceProcessingDescription DateOfLastDetectorCalibration DetectorID
        EndAcquisitionDateTime FirstTreatmentDate InstanceCreationDate IntendedPhaseEndDate
        IntendedPhaseStartDate MostRecentTreatmentDate ObservationDateTime
        OperatorIdentificationSequence ProtocolName RTPlanDate RTPlanTime
        RTTreatmentApproachLabel SeriesDate SeriesTime StartAcquisitionDateTime
        TimeOfLastDetectorCalibration TreatmentDate TreatmentSite TreatmentTime
        """,
    "Z/D": """
        ContentCreatorName ContentDate ContentTime ContrastBolusAgent
        InstructionPerformedDateTime PatientID
        """,
    "X/Z/D": """
        AcquisitionDateTime DeviceSerialNumber InstanceCreationTime InstitutionCodeSequence
        InstitutionName OperatorsName ReferencedPerformedProcedureStepSequence StationName
        """,
    "X/Z/U*": """
        ReferencedImageSequence SourceImageSequence
        """,
}
BASIC_PROFILE: dict[str, str] = {
    keyword: action for action, keywords in _ROWS.items() for keyword in keywords.split()
}
# The Retain Longitudinal Temporal Information with Modified Dates Option (PS3.15 E.3.6) changes
# the action of every date, time and date-time in the table to "modify" (C), except for the
# patient's birth date and time, which keep their Basic Profile action (Z and X).
DATE_VRS = frozenset({"DA", "DT", "TM"})
DATES_NOT_MODIFIED = frozenset({"PatientBirthDate", "PatientBirthTime"})
